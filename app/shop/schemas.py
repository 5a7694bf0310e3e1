"""Request bodies of the shop API, validated strictly (no string-to-number coercion)."""

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr


class OrderLine(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sku: StrictStr = Field(min_length=1, max_length=64)
    quantity: StrictInt = Field(ge=1, le=99)


class OrderRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    items: list[OrderLine] = Field(min_length=1, max_length=100)
