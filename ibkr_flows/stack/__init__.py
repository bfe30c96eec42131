"""`ibkr up` / `ibkr down`: a local Prefect server, the deployments, the alert automations and a worker."""
