"""Money: prices, the double-entry ledger, credits. Plain Python, no I/O."""
