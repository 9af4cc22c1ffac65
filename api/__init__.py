"""The LedgerBridge gateway (FastAPI)."""
