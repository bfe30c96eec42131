"""ibkr-flows: Prefect flows for Interactive Brokers research (doctor, ingestion, backtests).

The top-level `flows/`, `tasks/` and `storage/` packages are the design card's layers; everything else lives here.
"""
