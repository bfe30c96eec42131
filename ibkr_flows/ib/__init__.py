"""IB's vocabulary, shared by the doctor, the ingestion and the simulator: error codes and their classes, bar
sizes, what-to-show values, durations, exchange sessions and the wire framing."""
