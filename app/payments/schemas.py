"""Request bodies of the payment API."""

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


class InitiatePaymentRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    order_id: StrictStr = Field(min_length=1, max_length=64)
    amount: StrictInt | None = None
