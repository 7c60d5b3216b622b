"""What every process of the dialer shares: its settings, logging, metrics and tracing, and its Temporal client."""
