"""The ops console for staff: transactions, timelines and admin actions (under /ops)."""

from app.ops.routes import bp

__all__ = ["bp"]
