"""Forms of the ops console. Every POST carries Flask-WTF's hidden csrf_token (button-only
actions render it with csrf_token()); the list's filter form is a bookmarkable GET that
changes nothing: the token it carries is signed under a key of its own (GET_FORM_TOKEN_KEY), so
no POST accepts it if it leaks from a URL into logs or history."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import DateField, HiddenField, SelectField, StringField, SubmitField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional, Regexp, ValidationError

from app.domain.status import Status
from app.services.ops import ListFilters


class RefundForm(FlaskForm):
    amount = StringField(
        "Amount to refund, in minor units (cents)",
        id="refund-amount",
        validators=[DataRequired("Enter an amount."),
                    Regexp(r"^\s*[0-9]{1,12}\s*$", message="Enter a whole number of minor units, like 500 for 5.00.")],
        render_kw={"inputmode": "numeric", "autocomplete": "off"},
    )
    # A fresh one-time key on every page: the same form sent twice refunds once.
    request_key = HiddenField(validators=[Optional(), Length(max=64)])
    submit = SubmitField("Refund")

    def validate_amount(self, field) -> None:
        text = (field.data or "").strip()
        if text.isascii() and text.isdigit() and int(text) <= 0:  # the Regexp above reports the rest
            raise ValidationError("The amount must be above 0.")

    @property
    def minor_units(self) -> int:
        return int(self.amount.data.strip())


class FilterForm(FlaskForm):
    class Meta:
        csrf = False

    status = SelectField("Status", choices=[SelectChoice("", "Any status")]
                         + [SelectChoice(s.value, s.value.replace("_", " ")) for s in Status], validators=[Optional()])
    # Any name is accepted (older transactions may name a gateway no longer configured).
    gateway = SelectField("Gateway", choices=[SelectChoice("", "Any gateway")], validators=[Optional()],
                          validate_choice=False)
    flagged = SelectField("Flagged for review", validators=[Optional()], choices=[
        SelectChoice("", "Either"), SelectChoice("1", "Flagged"), SelectChoice("0", "Not flagged")])

    def offer_gateways(self, names: list[str]) -> None:
        """Fill the gateway choices with the names known at request time."""
        asked = (self.gateway.data or "").strip()[:32]
        names = names + ([asked] if asked and asked not in names else [])
        self.gateway.choices = [SelectChoice("", "Any gateway")] + [SelectChoice(n) for n in names]
    created_from = DateField("Created from (UTC)", validators=[Optional()])
    created_to = DateField("Created to (UTC, inclusive)", validators=[Optional()])
    q = StringField("Transaction or order id", validators=[Optional(), Length(max=40)],
                    render_kw={"autocomplete": "off", "spellcheck": "false"})

    def to_filters(self) -> ListFilters:
        """The valid filters; a field that failed validation counts as unset."""
        def ok(field):
            return field.data if not field.errors and field.data not in ("", None) else None

        flagged = ok(self.flagged)
        return ListFilters(
            status=ok(self.status),
            gateway=ok(self.gateway),
            flagged=None if flagged is None else flagged == "1",
            created_from=ok(self.created_from),
            created_to=ok(self.created_to),
            search=(ok(self.q) or "").strip() or None,
        )
