"""Pure-Python domain: payment statuses, the transition table, money. No Flask, no SQLAlchemy."""
