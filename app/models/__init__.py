"""SQLAlchemy models, one module per aggregate. Importing this package registers them all."""

from app.models.catalog import Product
from app.models.identity import StaffSession, StaffSocket, User
from app.models.idempotency import IdempotencyRecord
from app.models.order import Order, OrderItem, OrderStatus
from app.models.transaction import Refund, Transaction, TransactionEvent
from app.models.webhook import WebhookEvent, WebhookRejection

__all__ = [
    "IdempotencyRecord",
    "Order",
    "OrderItem",
    "OrderStatus",
    "Product",
    "Refund",
    "StaffSession",
    "StaffSocket",
    "Transaction",
    "TransactionEvent",
    "User",
    "WebhookEvent",
    "WebhookRejection",
]
