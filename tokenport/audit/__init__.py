"""The tamper-evident audit log: RFC 6962 Merkle trees over content-free entries, per zone."""
