"""Shops with their secrets: created and rotated here, sealed by the vault, cached briefly in
memory so the webhook receiver verifies a delivery without a database round trip.

Anyone can name a shop in a webhook URL, so the cache is bounded (least recently used entries
go first, misses in a smaller share of their own) and an id that is not a shop id's format is
answered "no such shop" without a lookup or an entry."""

import asyncio
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

import msgspec

from plugin import signatures
from plugin.klarna.models import Environment, Region
from plugin.store import NewShop, ShopChanges, Store
from plugin.store.records import KLARNA_CREDENTIALS, Shop, ShopOptions
from plugin.vault import Vault

CACHE_SECONDS = 5.0
KLARNA_NOT_CONFIGURED = "KLARNA_NOT_CONFIGURED"  # the error of a shipment waiting for credentials
ROTATION_GRACE_SECONDS = 24 * 3600.0
# At most this many shops (and this many misses besides) in each cache: ~2 KB each.
CACHE_ENTRIES = 10_000
CACHE_MISSES = 1_000
# The options (ShopOptions' fields) every shop uses, as its settings page offers them: how to
# capture, what the customer sees, and the order's life after (release, keep-alive). Each platform
# adds its own (plugin.platforms.registry).
COMMON_OPTIONS = (
    "capture_mode",
    "send_tracking",
    "trigger_send_out",
    "description_template",
    "release_remaining",
    "keep_alive",
    "keep_alive_days",
    "failure_alerts",
    "time_zone",
    "locale",
)


_SHOP_ID = re.compile(r"shop_[0-9a-f]{12}")

V = TypeVar("V")


def is_shop_id(value: str) -> bool:
    """Whether `value` is written as the ids `Shops` makes: `shop_` and 12 hex digits."""
    return _SHOP_ID.fullmatch(value) is not None


class ExpiringLru(Generic[V]):
    """Entries that expire, at most `entries` of them plus `misses` entries holding None: when
    full, the least recently used goes. Misses are kept apart so that a flood of unknown names
    cannot push the known shops out."""

    def __init__(self, entries: int, misses: int) -> None:
        self._limits = {True: entries, False: misses}
        self._parts: dict[bool, OrderedDict[str, tuple[float, V | None]]] = {
            True: OrderedDict(),
            False: OrderedDict(),
        }

    def __len__(self) -> int:
        return len(self._parts[True]) + len(self._parts[False])

    def get(self, key: str, now: float) -> tuple[bool, V | None]:
        """(found, value) of an entry that has not expired by `now`."""
        for part in self._parts.values():
            entry = part.get(key)
            if entry is not None and entry[0] > now:
                part.move_to_end(key)
                return True, entry[1]
        return False, None

    def put(self, key: str, value: V | None, expires: float) -> None:
        self.pop(key)
        part = self._parts[value is not None]
        part[key] = (expires, value)
        while len(part) > self._limits[value is not None]:
            part.popitem(last=False)

    def pop(self, key: str) -> None:
        for part in self._parts.values():
            part.pop(key, None)

    def clear(self) -> None:
        for part in self._parts.values():
            part.clear()


class ShopSecrets(msgspec.Struct, frozen=True):
    shop: Shop
    webhook_keys: tuple[bytes, ...]


class Shops:
    def __init__(
        self,
        store: Store,
        vault: Vault,
        *,
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        cache_entries: int = CACHE_ENTRIES,
        cache_misses: int = CACHE_MISSES,
        wake: Callable[[], None] = lambda: None,
        domain_formats: Mapping[str, Callable[[str], bool]] | None = None,
    ) -> None:
        """`wake`: this process's workers, told when saved credentials release waiting jobs
        (other processes hear it from the store). `domain_formats`: how each platform writes its
        storefront domains; a domain not in its format is no shop, without a lookup."""
        self.store = store
        self._domain_formats = dict(domain_formats or {})
        self._wake = wake
        self.vault = vault
        self._cache_seconds = cache_seconds
        self._clock = clock
        # Other processes may change a shop: entries live briefly, misses included.
        self._cache: ExpiringLru[ShopSecrets] = ExpiringLru(cache_entries, cache_misses)
        # The load of a shop in progress, shared by every request that misses meanwhile (when an
        # entry expires under load, dozens of requests miss it at once); and a count of changes,
        # so that a load begun before a change does not cache what it read.
        self._loading: dict[str, asyncio.Task[ShopSecrets | None]] = {}
        self._changes = 0
        self._domains: ExpiringLru[Shop] = ExpiringLru(cache_entries, cache_misses)

    @property
    def cached(self) -> int:
        """Entries held in the caches, misses included (bounded: see `CACHE_ENTRIES`)."""
        return len(self._cache) + len(self._domains)

    async def create(
        self,
        *,
        platform: str,
        name: str,
        klarna_region: Region,
        klarna_environment: Environment,
        klarna_username: str,
        klarna_password: str,
        status_url: str | None = None,
        options: ShopOptions | None = None,
        shop_domain: str | None = None,
        platform_token: str | None = None,
        email: str | None = None,
    ) -> tuple[Shop, str]:
        """A new shop and its webhook secret (`whsec_...`), shown to the merchant once.
        `shop_domain` and `platform_token` are a storefront's site and API credential."""
        shop_id = "shop_" + secrets.token_hex(6)
        secret = signatures.new_secret()
        sealed_token = (
            None
            if platform_token is None
            else self.vault.encrypt(
                platform_token, context=secret_context(shop_id, "platform_token")
            )
        )
        shop = await self.store.create_shop(
            NewShop(
                id=shop_id,
                platform=platform,
                name=name,
                klarna_region=klarna_region,
                klarna_environment=klarna_environment,
                klarna_username=klarna_username,
                klarna_password=self.vault.encrypt(
                    klarna_password, context=secret_context(shop_id, "klarna_password")
                ),
                status_url=status_url,
                options=options or ShopOptions(),
                shop_domain=shop_domain,
                platform_token=sealed_token,
                email=email,
            ),
            self.vault.encrypt(secret, context=secret_context(shop_id, "webhook_secret")),
            time.time(),
        )
        self._domains.clear()
        return shop, secret

    async def rotate_secret(
        self, shop_id: str, grace_seconds: float = ROTATION_GRACE_SECONDS
    ) -> str:
        """A new webhook secret; the old ones keep verifying for `grace_seconds`."""
        secret = signatures.new_secret()
        await self.store.rotate_webhook_secret(
            shop_id,
            self.vault.encrypt(secret, context=secret_context(shop_id, "webhook_secret")),
            grace_seconds,
            time.time(),
        )
        self._changed(shop_id)
        return secret

    async def get(self, shop_id: str) -> ShopSecrets | None:
        """The shop with its current webhook keys, from a cache of a few seconds; None for an id
        that is not a shop id's format, without a lookup."""
        if not is_shop_id(shop_id):
            return None
        now = self._clock()
        found, cached = self._cache.get(shop_id, now)
        if found:
            return cached
        loading = self._loading.get(shop_id)
        if loading is None or loading.get_loop() is not asyncio.get_running_loop():
            loading = asyncio.ensure_future(self._load_into_cache(shop_id, now, self._changes))
            self._loading[shop_id] = loading
        # Shielded: a request that gives up does not cancel the load for the others.
        return await asyncio.shield(loading)

    async def _load_into_cache(self, shop_id: str, now: float, changes: int) -> ShopSecrets | None:
        try:
            loaded = await self._load(shop_id)
            if changes == self._changes:
                self._cache.put(shop_id, loaded, now + self._cache_seconds)
            return loaded
        finally:
            if self._loading.get(shop_id) is asyncio.current_task():
                del self._loading[shop_id]

    def _changed(self, shop_id: str | None = None) -> None:
        """A shop (or, with None, any shop) changed: cached and loading copies are out of date."""
        self._changes += 1
        if shop_id is None:
            self._cache.clear()
            self._loading.clear()
        else:
            self._cache.pop(shop_id)
            self._loading.pop(shop_id, None)

    async def _load(self, shop_id: str) -> ShopSecrets | None:
        shop = await self.store.get_shop(shop_id)
        if shop is None:
            return None
        stored = await self.store.webhook_secrets(shop_id, time.time())
        keys = tuple(
            signatures.parse_secret(
                self.vault.decrypt(item.secret, context=secret_context(shop_id, "webhook_secret"))
            )
            for item in stored
        )
        return ShopSecrets(shop=shop, webhook_keys=keys)

    async def update(
        self, shop_id: str, changes: ShopChanges, *, klarna_password: str | None = None
    ) -> Shop | None:
        """Change a shop; a new Klarna password is sealed here, never stored in the clear."""
        if klarna_password is not None:
            changes = msgspec.structs.replace(
                changes,
                klarna_password=self.vault.encrypt(
                    klarna_password, context=secret_context(shop_id, "klarna_password")
                ),
            )
        shop = await self.store.update_shop(shop_id, changes, time.time())
        self._changed(shop_id)
        if changes.enabled is False:
            # A disabled (uninstalled) shop's settings sessions end with it, in every process.
            await self.store.end_shop_sessions(shop_id)
        self._domains.clear()
        saved_credentials = klarna_password is not None or any(
            field is not msgspec.UNSET
            for field in (
                changes.klarna_username,
                changes.klarna_region,
                changes.klarna_environment,
            )
        )
        # Shipments waiting on the credentials (missing, or refused by Klarna) run now, in every
        # process: one statement, announced to the workers.
        if (
            shop is not None
            and shop.klarna_configured
            and saved_credentials
            and await self.store.release_waiting(shop_id, KLARNA_CREDENTIALS, time.time())
        ):
            self._wake()
        return shop

    async def install(
        self, *, platform: str, shop_domain: str, token: str, time_zone: str | None = None
    ) -> Shop:
        """A storefront app installed (or installed again) on `shop_domain` with API `token`:
        the shop is created on first install, with no Klarna credentials yet and `time_zone`
        (the storefront's, when it says; else UTC), else re-enabled with the new token. Its
        settings, ledger and history survive a reinstall, the time zone the merchant set too."""
        shop = await self.store.shop_by_domain(platform, shop_domain)
        if shop is None:
            shop_id = "shop_" + secrets.token_hex(6)
            try:
                shop = await self.store.create_shop(
                    NewShop(
                        id=shop_id,
                        platform=platform,
                        name=shop_domain,
                        klarna_region="eu",
                        klarna_environment="playground",
                        klarna_username="",
                        klarna_password=self.vault.encrypt(
                            "", context=secret_context(shop_id, "klarna_password")
                        ),
                        shop_domain=shop_domain,
                        platform_token=self.vault.encrypt(
                            token, context=secret_context(shop_id, "platform_token")
                        ),
                        options=ShopOptions(time_zone=time_zone or "UTC"),
                    ),
                    self.vault.encrypt(
                        signatures.new_secret(), context=secret_context(shop_id, "webhook_secret")
                    ),
                    time.time(),
                )
                self._domains.clear()  # a miss cached before the install must not linger
                return shop
            except Exception:
                # Two installs racing: the other one created the shop; take it from there.
                shop = await self.store.shop_by_domain(platform, shop_domain)
                if shop is None:
                    raise
        changed = await self.update(
            shop.id,
            ShopChanges(
                enabled=True,
                platform_token=self.vault.encrypt(
                    token, context=secret_context(shop.id, "platform_token")
                ),
            ),
        )
        return changed or shop

    async def set_platform_token(self, shop_id: str, token: str | None) -> Shop | None:
        """Store (sealed) or forget a shop's storefront API credential."""
        sealed = (
            None
            if token is None
            else self.vault.encrypt(token, context=secret_context(shop_id, "platform_token"))
        )
        return await self.update(shop_id, ShopChanges(platform_token=sealed))

    async def uninstall(self, shop_id: str) -> Shop | None:
        """The app was removed from the storefront: disabled, its token forgotten."""
        return await self.update(shop_id, ShopChanges(enabled=False, platform_token=None))

    async def by_domain(self, platform: str, shop_domain: str) -> Shop | None:
        """The shop installed on a storefront domain, from a cache of a few seconds; None for a
        domain not in its platform's format, without a lookup."""
        well_formed = self._domain_formats.get(platform)
        if well_formed is not None and not well_formed(shop_domain):
            return None
        now = self._clock()
        key = f"{platform}:{shop_domain}"
        found, cached = self._domains.get(key, now)
        if found:
            return cached
        shop = await self.store.shop_by_domain(platform, shop_domain)
        self._domains.put(key, shop, now + self._cache_seconds)
        return shop

    def forget(self, platform: str, shop_domain: str) -> None:
        """Drop a cached domain lookup (the shop was removed behind the cache's back)."""
        self._domains.pop(f"{platform}:{shop_domain}")
        self._changed()

    def platform_token(self, shop: Shop) -> str | None:
        """The storefront API token, None when the app is not installed."""
        if shop.platform_token is None:
            return None
        return self.vault.decrypt(
            shop.platform_token, context=secret_context(shop.id, "platform_token")
        )

    def klarna_password(self, shop: Shop) -> str:
        return self.vault.decrypt(
            shop.klarna_password, context=secret_context(shop.id, "klarna_password")
        )

    async def rotate_keys(self) -> tuple[int, int]:
        """Re-encrypt every stored secret not sealed with the vault's first key; returns
        (re-encrypted, stored)."""
        sealed = await self.store.sealed_secrets()
        resealed = [
            msgspec.structs.replace(
                secret,
                blob=self.vault.reencrypt(
                    secret.blob, context=secret_context(secret.shop_id, secret.field)
                ),
            )
            for secret in sealed
            if self.vault.needs_rotation(secret.blob)
        ]
        await self.store.reseal(resealed)
        self._changed()
        return len(resealed), len(sealed)


def secret_context(shop_id: str, field: str) -> str:
    # Bound into each ciphertext: a secret copied to another shop or field does not open.
    return f"shop:{shop_id}:{field}"
