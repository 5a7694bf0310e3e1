"""Adapter for the contract's gateway protocol (section 4), as served by the built-in sandbox.

Retries are urllib3's: connection errors, read timeouts, 429, 500, 502, 503 and 504 are retried with
exponential backoff and jitter. Every retry of create-session carries the same
Idempotency-Key (the transaction id), so a retry never opens a second session.

A call, retries included, is over within its time budget (``GATEWAY_TOTAL_BUDGET``, 25 s)
whatever the gateway does. A timeout bounds each socket read, not an answer sent one byte at a
time, so the call, made on the caller's thread, keeps its deadline in ``_this_call`` and the
connections of this adapter's pools (``_Budgeted``: http and https, direct or through an HTTP
proxy) cut each blocking step to min(its configured timeout, the time left): the name lookup
of a new connection (on a helper thread, abandoned when the resolver takes longer), the connect
(to each address the name resolves to, in turn), the TLS handshake (which Python bounds as a whole
by the socket's timeout), each write of the request and each socket read of the answer (status
line, headers and body all come through one reader, over a plain or a TLS socket). Once no time
is left a step fails with a timeout, its connection is closed, and the retry policy gives up
too: no further attempt. Nothing left behind holds the process at exit. Under gevent,
whose TLS waits (handshake, reads of a record) each get the socket's whole timeout where
CPython's share one deadline, the call also runs under a gevent.Timeout at its deadline (which
covers everything). Not cut without gevent: the inner TLS reads through an HTTPS proxy (TLS in
TLS), and anything through a SOCKS proxy.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import ipaddress
import logging
import socket
import sys
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Mapping
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family
from urllib3.util.retry import Retry

from app import bounded_json
from app.domain.money import MAX_MINOR_UNITS
from app.domain.status import Status
from app.gateways import signing
from app.gateways.base import (
    CreatedSession,
    GatewayError,
    GatewayNoAnswer,
    GatewayRejected,
    GatewayStatus,
    GatewayUnavailable,
    RefundResult,
    SessionRequest,
    VerifiedEvent,
    WebhookRejected,
)
from app.metrics import GATEWAY_SECONDS
from app.models.clock import iso
from config import ConfigurationError

log = logging.getLogger(__name__)
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
_this_call = threading.local()  # the deadline of the call the current thread is making


def _time_left() -> float | None:
    """Seconds left in the budget of the call this thread is making (0 or less: spent); None outside a call."""
    deadline = getattr(_this_call, "deadline", None)
    return None if deadline is None else deadline - time.monotonic()


def _within_budget(timeout: float | None) -> float | None:
    """``timeout`` (a configured one) cut to the time left in this thread's call; a TimeoutError
    when none is left. Outside a call, ``timeout`` as it is."""
    left = _time_left()
    if left is None:
        return timeout
    if left <= 0:
        raise TimeoutError("the call's time budget is spent")
    return left if timeout is None else min(timeout, left)


def _green_deadline(deadline: float):
    """Under gevent, a gevent.Timeout raising a socket timeout just past ``deadline``; else nothing."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("socket"):
        return contextlib.nullcontext()
    import gevent

    left = deadline - time.monotonic() + 0.005  # past it, so the retry policy sees the budget spent
    return gevent.Timeout(max(left, 0.005), TimeoutError("the call's time budget is spent"))


def _resolve(host: str, port: int) -> list:
    """getaddrinfo for a connection this thread's call opens, waited for at most the time its budget
    has left. A name's lookup runs on a helper thread, abandoned (a daemon) if the resolver takes
    longer: only when a connection is opened, which pooled keep-alive connections make rare."""
    def look_up() -> list:
        return socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)

    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:  # an address needs no lookup
        return look_up()
    lookup: Future = Future()

    def run() -> None:
        try:
            lookup.set_result(look_up())
        except BaseException as exc:  # handed to the caller
            lookup.set_exception(exc)

    threading.Thread(target=run, name="gateway-lookup", daemon=True).start()
    try:
        return lookup.result(timeout=_within_budget(None))
    except FutureTimeout:
        raise TimeoutError(f"the call's time budget was spent looking up {host}") from None


class _BudgetedReads(io.RawIOBase):
    """The socket reads of one answer, each waiting at most until the call's deadline."""

    def __init__(self, raw: io.RawIOBase, sock) -> None:
        super().__init__()
        self._raw, self._sock, self._timeout = raw, sock, sock.gettimeout()  # the read timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        self._sock.settimeout(_within_budget(self._timeout))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _BudgetedAnswer(http.client.HTTPResponse):
    """http.client's reader of an answer (and of a proxy's answer to CONNECT), over _BudgetedReads."""

    def __init__(self, sock, *args, **kwargs) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp = io.BufferedReader(_BudgetedReads(self.fp.detach(), sock))  # detach: nothing read yet


class _Budgeted:
    """Mixed into urllib3's connections: connecting and each write wait at most until the deadline."""

    response_class = _BudgetedAnswer
    sock: Any
    timeout: Any

    def _new_conn(self):
        if _time_left() is None:
            return super()._new_conn()
        # urllib3 gives each address the name resolves to the whole connect timeout, one after
        # another: here each is tried with min(the connect timeout, the time left) when its turn comes.
        try:
            addresses = _resolve(self._dns_host, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        name, timeout = self._dns_host, self.timeout  # the connect timeout
        try:
            for number, (*_, address) in enumerate(addresses, 1):
                self._dns_host, self.timeout = address[0], _within_budget(timeout)
                try:
                    sock = super()._new_conn()
                    break
                except (ConnectTimeoutError, NewConnectionError):
                    if number == len(addresses):
                        raise
        finally:
            self._dns_host, self.timeout = name, timeout
        try:
            sock.settimeout(_within_budget(self.timeout))  # for the TLS handshake, or a CONNECT to a proxy
        except TimeoutError:
            sock.close()
            raise
        return sock

    def send(self, data) -> None:
        if self.sock is not None:
            self.sock.settimeout(_within_budget(self.timeout))
        super().send(data)


class _BudgetedHTTPConnection(_Budgeted, HTTPConnection):
    pass


class _BudgetedHTTPSConnection(_Budgeted, HTTPSConnection):
    pass


class _BudgetedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _BudgetedHTTPConnection


class _BudgetedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _BudgetedHTTPSConnection


_BUDGETED_POOLS = {"http": _BudgetedHTTPPool, "https": _BudgetedHTTPSPool}


class _BudgetedAdapter(HTTPAdapter):
    """requests' adapter whose pools (direct, or through a proxy) make _Budgeted connections."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _BUDGETED_POOLS

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS has pools of its own: not bounded
            manager.pool_classes_by_scheme = _BUDGETED_POOLS
        return manager


class _BudgetedRetry(Retry):
    """urllib3's retry policy, which also gives up when the backoff before the next attempt would
    outlast the call's time budget (or none is left): it is not slept, and the call ends as the
    last attempt did. Retry-After is not followed, so the backoff checked is the one slept."""

    def get_backoff_time(self) -> float:
        # Drawn once per policy (each attempt's is new), so the backoff checked is the one slept.
        if "_backoff" not in self.__dict__:
            self.__dict__["_backoff"] = super().get_backoff_time()
        return self.__dict__["_backoff"]

    def is_exhausted(self) -> bool:
        left = _time_left()
        if left is not None and self.get_backoff_time() >= left:
            return True
        return super().is_exhausted()


def _is_amount(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _storable_amount(value: Any) -> int | None:
    """A webhook's amount as the delivery log stores it: one we could have asked for, else None
    (which never matches a transaction, so a success is flagged, as any other mismatch)."""
    return value if _is_amount(value) and 0 <= value <= MAX_MINOR_UNITS else None


def _text(value: Any, longest: int) -> str | None:
    """A string field of a gateway's answer, or None when it is not text we could store and match
    (empty, longer than its column, a NUL, or a lone surrogate, which no database encoding takes)."""
    if isinstance(value, str) and 0 < len(value) <= longest and "\x00" not in value:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return value
    return None


class SandboxGateway:
    """Speaks contract section 4 over HTTP with requests."""

    name = "sandbox"

    def __init__(
        self,
        base_url: str,
        api_key: str,
        webhook_secrets: list[str],
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 4.0,
        retries: int = 3,
        backoff: float = 0.5,
        total_budget: float = 25.0,
    ):
        self.base_url = base_url.rstrip("/")
        if not webhook_secrets:
            raise ConfigurationError("configuration error: PAYMENT_WEBHOOK_SECRET is empty")
        for number, secret in enumerate(webhook_secrets, 1):
            try:  # refuse a malformed secret at start-up, not with a fault on every webhook
                signing.decode_secret(secret)
            except ValueError as exc:
                raise ConfigurationError(f"configuration error: PAYMENT_WEBHOOK_SECRET, secret {number} of "
                                   f"{len(webhook_secrets)}: {exc} (expected whsec_ followed by base64)") from None
        self.webhook_secrets = webhook_secrets
        self.timeout = (connect_timeout, read_timeout)
        self.total_budget = total_budget
        retry = _BudgetedRetry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            other=0,
            allowed_methods=None,  # POSTs too: each carries an idempotency key
            status_forcelist=RETRIED_STATUSES,
            backoff_factor=backoff,
            backoff_max=4.0,
            backoff_jitter=backoff / 2 if backoff else 0.0,
            respect_retry_after_header=False,  # keeps the worst case bounded
            raise_on_status=False,
        )
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {api_key}"
        # What the environment says of calls to this gateway (a proxy from HTTP(S)_PROXY unless
        # NO_PROXY names it, a CA bundle from REQUESTS_CA_BUNDLE), read once, by requests' own
        # rules: every call goes to this one address. Left to requests per call, the environment
        # is read again on each, and a ~/.netrc entry for the gateway's host replaces the API key.
        settings = self.http.merge_environment_settings(self.base_url, {}, None, None, None)
        self.http.proxies, self.http.verify = settings["proxies"], settings["verify"]
        self.http.trust_env = False
        adapter = _BudgetedAdapter(max_retries=retry, pool_connections=4, pool_maxsize=64)
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "SandboxGateway":
        return cls(
            config["PAYMENT_GATEWAY_URL"],
            config["PAYMENT_GATEWAY_API_KEY"],
            config["PAYMENT_WEBHOOK_SECRET"].split(),
            connect_timeout=config["GATEWAY_CONNECT_TIMEOUT"],
            read_timeout=config["GATEWAY_READ_TIMEOUT"],
            retries=config["GATEWAY_RETRIES"],
            backoff=config["GATEWAY_BACKOFF"],
            total_budget=config["GATEWAY_TOTAL_BUDGET"],
        )

    # -- outgoing calls -------------------------------------------------------------------

    def _call(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs) -> requests.Response:
        operation = path.strip("/").split("/")[0] or "root"
        started = time.perf_counter()
        result = "error"
        try:
            response = self._send(method, path, ok, **kwargs)
            result = "ok"
            return response
        except GatewayRejected:
            result = "rejected"
            raise
        finally:
            GATEWAY_SECONDS.labels(operation, result).observe(time.perf_counter() - started)

    def _send(self, method: str, path: str, ok: tuple[int, ...], **kwargs) -> requests.Response:
        url = f"{self.base_url}{path}"
        deadline = time.monotonic() + self.total_budget
        _this_call.deadline = deadline  # read by _Budgeted connections and by the retry policy
        try:
            # Redirects are not followed: a POST answered 303 may have been acted on, and
            # following it to a page that answers 404 would read as a refusal of the POST.
            # The whole body is read here (not streamed), within the deadline.
            with _green_deadline(deadline):
                response = self.http.request(method, url, timeout=self.timeout, allow_redirects=False, **kwargs)
        except (requests.RequestException, TimeoutError) as exc:  # TimeoutError: _green_deadline's, anywhere
            if time.monotonic() >= deadline:
                log.warning("gateway %s %s gave no complete answer within %.0f s", method, path, self.total_budget)
                raise GatewayNoAnswer(f"gateway gave no complete answer within {self.total_budget:.0f} s") from None
            log.warning("gateway %s %s unreachable: %s", method, path, type(exc).__name__)
            raise GatewayNoAnswer(f"gateway unreachable: {type(exc).__name__}") from exc
        finally:
            _this_call.deadline = None
        if response.status_code in ok:
            return response
        if response.status_code in RETRIED_STATUSES:
            raise GatewayUnavailable(f"gateway answered {response.status_code} after retries")
        if not 400 <= response.status_code < 500:
            # Only a 4xx says the call was not acted on. A server error (the gateway's, or a
            # proxy's in front of it: a 524 is a CDN's timeout waiting for it), a redirect, or a
            # 2xx other than the protocol's may all come after it was: never "it did nothing".
            # Not retried: a 501 or a 303 will not change.
            raise GatewayUnavailable(f"gateway answered {response.status_code}")
        code = None
        try:
            body = bounded_json.loads(response.content)
            code = body.get("error") if isinstance(body, dict) else None
        except ValueError:
            pass
        if not isinstance(code, str):  # some gateways send an object there; none names a known code
            code = None
        raise GatewayRejected(f"gateway refused {method} {path}: {response.status_code}", response.status_code, code)

    @staticmethod
    def _json(response: requests.Response) -> dict:
        try:
            data = bounded_json.loads(response.content)
        except ValueError as exc:
            raise GatewayError("gateway answered with a body that is not JSON") from exc
        if not isinstance(data, dict):
            raise GatewayError("gateway answered with JSON that is not an object")
        return data

    def create_session(self, request: SessionRequest) -> CreatedSession:
        body = {
            "transaction_id": request.transaction_id,
            "amount": request.amount,
            "currency": request.currency,
            "callback_url": request.callback_url,
            "return_url": request.return_url,
            "cancel_url": request.cancel_url,
            "expires_at": iso(request.expires_at),
        }
        response = self._call(
            "POST", "/create-session", json=body, headers={"Idempotency-Key": request.transaction_id}
        )
        data = self._json(response)
        # each must fit the column it is kept in (transactions.gateway_session_id, payment_url)
        session_id, payment_url = _text(data.get("session_id"), 128), _text(data.get("payment_url"), 2000)
        if session_id is None or payment_url is None:
            raise GatewayError("gateway create-session answer lacks a usable session_id or payment_url")
        if urlsplit(payment_url).scheme not in ("https", "http") or not urlsplit(payment_url).netloc:
            raise GatewayError("gateway create-session answer has a payment_url that is not a web address")
        return CreatedSession(session_id, payment_url)

    def fetch_status(self, transaction_id: str) -> GatewayStatus | None:
        response = self._call("GET", f"/status/{transaction_id}", ok=(200, 404))
        if response.status_code == 404:
            return None
        data = self._json(response)
        status = Status.parse(data.get("status"))
        # a currency other than the payment's is flagged as a mismatch; one that is not text is malformed
        if status is None or not _is_amount(data.get("amount")) or _text(data.get("currency"), 64) is None:
            raise GatewayError("gateway status answer is malformed")
        return GatewayStatus(transaction_id, status, data["amount"], data["currency"])

    def expire_session(self, session_id: str) -> Status:
        response = self._call("POST", f"/sessions/{session_id}/expire", ok=(200, 409))
        status = Status.parse(self._json(response).get("status"))
        if response.status_code == 409 and status == Status.SUCCESS:
            return Status.SUCCESS
        if response.status_code == 200 and status == Status.EXPIRED:
            return Status.EXPIRED
        raise GatewayError(f"gateway expire answer is malformed ({response.status_code})")

    def refund(self, transaction_id: str, amount: int, idempotency_key: str) -> RefundResult:
        response = self._call(
            "POST",
            "/refunds",
            json={"transaction_id": transaction_id, "amount": amount},
            headers={"Idempotency-Key": idempotency_key},
        )
        data = self._json(response)
        refund_id = data.get("refund_id")
        if not isinstance(refund_id, str):
            raise GatewayError("gateway refund answer lacks refund_id")
        return RefundResult(refund_id, _text(data.get("status"), 64))

    # -- incoming webhooks ----------------------------------------------------------------

    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> VerifiedEvent:
        try:
            signed_id, _ = signing.verify(self.webhook_secrets, headers, body)
        except signing.SignatureError as exc:
            raise WebhookRejected(exc.reason, exc.message, headers.get("webhook-id")) from None
        # Standard Webhooks sets no length for the id; one too long to store whole is kept
        # (and deduplicated) as its digest.
        webhook_id = signed_id if len(signed_id) <= 255 else "sha256:" + hashlib.sha256(signed_id.encode()).hexdigest()
        try:
            payload = bounded_json.loads(body)
        except ValueError:  # UnicodeDecodeError and too deep nesting included
            raise WebhookRejected("malformed_body", "The body is not JSON.", webhook_id) from None
        if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
            raise WebhookRejected("malformed_body", "The body has no event type.", webhook_id)
        data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
        amount = data.get("amount")
        return VerifiedEvent(
            webhook_id=webhook_id,
            event_type=payload["type"][:64],
            transaction_id=_text(data.get("transaction_id"), 40),  # longer is none of ours
            session_id=_text(data.get("session_id"), 128),
            status=Status.parse(data.get("status")),
            amount=_storable_amount(amount),
            currency=_text(data.get("currency"), 3),  # anything else never matches: flagged
            payload=payload,
        )
