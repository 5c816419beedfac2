"""The pipeline templates, one per category, each with suggested features.

Templates are data: events with their property schemas, and features whose windows and
fields follow what an e-commerce recommender typically reads (recent intent in minutes
and hours, purchase history in weeks). A test checks every suggested feature against
the same rules a dashboard's feature must pass.
"""

from __future__ import annotations

from app.schemas.feature import Aggregation, FeatureFilter
from app.schemas.pipeline import EventDefinition, EventField, FieldType
from app.schemas.template import (
    PipelineTemplate,
    SuggestedAggregateFeature,
    SuggestedDerivedFeature,
)


def _f(
    name: str,
    type_: FieldType,
    required: bool = False,
    description: str = "",
    entity: str | None = None,
) -> EventField:
    return EventField(
        name=name, type=type_, required=required, description=description, entity=entity
    )


def _event(name: str, description: str, *fields: EventField) -> EventDefinition:
    return EventDefinition(name=name, description=description, fields=list(fields))


def _feature(
    name: str,
    description: str,
    source_event: str,
    aggregation: Aggregation,
    windows: list[str],
    field: str | None = None,
    *,
    size: int | None = None,
    where: dict[str, object] | None = None,
    entity: str | list[str] = "user",
) -> SuggestedAggregateFeature:
    return SuggestedAggregateFeature(
        name=name,
        description=description,
        source_event=source_event,
        aggregation=aggregation,
        field=field,
        time_windows=windows,
        size=size,
        filter=FeatureFilter.model_validate(where) if where is not None else None,
        entity=entity,
    )


# Entity keys: features may aggregate per product, or per user x category.
_PRODUCT = _f("product_id", "string", True, "Catalogue id of the product", entity="product")
_CATEGORY = _f("category", "string", False, "Product category path", entity="category")
_PRICE = _f("price", "number", False, "Unit price")
_CURRENCY = _f("currency", "string", False, "ISO 4217 code")
_QUANTITY = _f("quantity", "number", False, "Units")

_BEHAVIORAL = PipelineTemplate(
    name="behavioral",
    title="Browsing behaviour",
    description="Page and product views, cart changes and searches: short-term intent.",
    category="behavioral",
    events=[
        _event(
            "page_view",
            "A page was shown",
            _f("page_type", "string", True, "home, category, product, cart..."),
            _f("url", "string"),
            _f("referrer", "string"),
        ),
        _event("product_view", "A product page was shown", _PRODUCT, _CATEGORY, _PRICE, _CURRENCY),
        _event(
            "add_to_cart", "A product was added to the cart", _PRODUCT, _QUANTITY, _PRICE, _CURRENCY
        ),
        _event("remove_from_cart", "A product left the cart", _PRODUCT, _QUANTITY, _PRICE),
        _event(
            "search",
            "A search was run",
            _f("query", "string", True),
            _f("results_count", "number"),
        ),
    ],
    suggested_features=[
        _feature("page_views", "Pages viewed", "page_view", "COUNT", ["1h", "24h", "7d"]),
        _feature("product_views", "Products viewed", "product_view", "COUNT", ["1h", "24h", "7d"]),
        _feature(
            "recently_viewed",
            "The last 10 distinct products viewed, newest first",
            "product_view",
            "LAST_N",
            ["7d"],
            "product_id",
            size=10,
        ),
        _feature(
            "top_categories",
            "The 3 categories viewed most, with their counts",
            "product_view",
            "TOP_K",
            ["30d"],
            "category",
            size=3,
        ),
        _feature(
            "premium_views",
            "Views of products priced 100 or more",
            "product_view",
            "COUNT",
            ["24h", "7d"],
            where={"all": [{"field": "price", "op": "gte", "value": 100}]},
        ),
        _feature(
            "distinct_products_viewed",
            "Different products viewed",
            "product_view",
            "COUNT_DISTINCT",
            ["24h", "7d"],
            "product_id",
        ),
        _feature(
            "category_views",
            "This user's product views per category ({category: views})",
            "product_view",
            "COUNT",
            ["7d"],
            entity=["user", "category"],
        ),
        _feature(
            "product_cart_adds",
            "Times each product was added to a cart, by anyone (read per product)",
            "add_to_cart",
            "COUNT",
            ["1h", "24h"],
            entity="product",
        ),
        _feature("cart_adds", "Add-to-cart actions", "add_to_cart", "COUNT", ["5m", "1h", "24h"]),
        _feature(
            "since_cart_add",
            "Seconds since the latest add-to-cart (null after a day without one)",
            "add_to_cart",
            "RECENCY",
            ["24h"],
        ),
        _feature(
            "cart_value_added", "Value added to cart", "add_to_cart", "SUM", ["1h", "24h"], "price"
        ),
        _feature(
            "cart_removes", "Remove-from-cart actions", "remove_from_cart", "COUNT", ["1h", "24h"]
        ),
        _feature("searches", "Searches run", "search", "COUNT", ["1h", "24h"]),
        _feature("last_search", "Most recent search query", "search", "LAST", ["24h"], "query"),
        SuggestedDerivedFeature(
            name="cart_rate_24h",
            description="Cart adds per page view over 24 hours (null without page views)",
            expression="cart_adds_24h / page_views_24h",
        ),
    ],
)

_TRANSACTION = PipelineTemplate(
    name="transaction",
    title="Orders and refunds",
    description="Checkouts, purchases and refunds: value and purchase frequency.",
    category="transaction",
    events=[
        _event(
            "checkout_started",
            "The checkout flow was opened",
            _f("cart_value", "number", True),
            _f("items_count", "number"),
            _CURRENCY,
        ),
        _event(
            "purchase",
            "An order was placed",
            _f("order_id", "string", True),
            _f("revenue", "number", True, "Order total"),
            _f("items_count", "number"),
            _CURRENCY,
            _f("coupon_code", "string"),
        ),
        _event(
            "refund",
            "An order was (partly) refunded",
            _f("order_id", "string", True),
            _f("amount", "number", True),
            _f("reason", "string"),
        ),
    ],
    suggested_features=[
        _feature(
            "checkouts_started", "Checkouts opened", "checkout_started", "COUNT", ["1h", "24h"]
        ),
        _feature("purchases", "Orders placed", "purchase", "COUNT", ["7d", "30d", "90d"]),
        _feature("spend", "Money spent", "purchase", "SUM", ["30d"], "revenue"),
        _feature(
            "avg_order_value", "Average order value", "purchase", "AVG", ["30d", "90d"], "revenue"
        ),
        _feature("refunds", "Refunds", "refund", "COUNT", ["30d", "90d"]),
        _feature("refunded_amount", "Money refunded", "refund", "SUM", ["90d"], "amount"),
    ],
)

_CONTEXT = PipelineTemplate(
    name="context",
    title="Session context",
    description="Sessions, devices and locale: who is browsing, from where and on what.",
    category="context",
    events=[
        _event(
            "session_start",
            "A visit began",
            _f("device_type", "string", True, "desktop, mobile, tablet"),
            _f("device_id", "string"),
            _f("os", "string"),
            _f("country", "string"),
            _f("language", "string"),
            _f("referrer", "string"),
        ),
        _event(
            "locale_change",
            "The shopper changed language or currency",
            _f("language", "string"),
            _CURRENCY,
        ),
    ],
    suggested_features=[
        _feature("sessions", "Visits", "session_start", "COUNT", ["24h", "7d", "30d"]),
        _feature(
            "last_device_type",
            "Device of the latest visit",
            "session_start",
            "LAST",
            ["30d"],
            "device_type",
        ),
        _feature(
            "distinct_devices",
            "Devices used",
            "session_start",
            "COUNT_DISTINCT",
            ["30d"],
            "device_id",
        ),
    ],
)

_MARKETING = PipelineTemplate(
    name="marketing",
    title="Campaign response",
    description="Campaign clicks, e-mail engagement and coupons: what brings the shopper in.",
    category="marketing",
    events=[
        _event(
            "campaign_click",
            "A tracked campaign link was followed",
            _f("campaign_id", "string", True),
            _f("channel", "string", False, "email, social, search, display..."),
            _f("utm_source", "string"),
            _f("utm_medium", "string"),
        ),
        _event("email_open", "A marketing e-mail was opened", _f("campaign_id", "string", True)),
        _event(
            "coupon_applied",
            "A coupon was applied to the cart",
            _f("coupon_code", "string", True),
            _f("discount_amount", "number"),
        ),
    ],
    suggested_features=[
        _feature("campaign_clicks", "Campaign clicks", "campaign_click", "COUNT", ["24h", "7d"]),
        _feature(
            "last_campaign",
            "Latest campaign clicked",
            "campaign_click",
            "LAST",
            ["7d"],
            "campaign_id",
        ),
        _feature("email_opens", "Marketing e-mails opened", "email_open", "COUNT", ["7d", "30d"]),
        _feature("coupons_applied", "Coupons applied", "coupon_applied", "COUNT", ["30d"]),
    ],
)

_TRUST = PipelineTemplate(
    name="trust",
    title="Account trust signals",
    description="Logins, failures and payment problems: signals for risk-aware offers.",
    category="trust",
    events=[
        _event(
            "login",
            "The shopper signed in",
            _f("method", "string", False, "password, sso, magic_link"),
            _f("ip_address", "string"),
        ),
        _event("login_failed", "A sign-in attempt failed", _f("reason", "string")),
        _event("password_reset", "A password reset was requested"),
        _event(
            "payment_failed",
            "A payment was declined",
            _f("amount", "number"),
            _f("reason", "string"),
        ),
    ],
    suggested_features=[
        _feature("failed_logins", "Failed sign-ins", "login_failed", "COUNT", ["1h", "24h"]),
        _feature(
            "login_ips",
            "Distinct sign-in IPs",
            "login",
            "COUNT_DISTINCT",
            ["24h", "7d"],
            "ip_address",
        ),
        _feature("password_resets", "Password resets", "password_reset", "COUNT", ["7d"]),
        _feature("payment_failures", "Declined payments", "payment_failed", "COUNT", ["24h", "7d"]),
    ],
)

_REALTIME = PipelineTemplate(
    name="realtime",
    title="In-session engagement",
    description="Heartbeats, scrolling and exit intent: what the shopper is doing right now.",
    category="realtime",
    events=[
        _event(
            "session_heartbeat",
            "Sent every few seconds while the tab is active",
            _f("page_type", "string"),
            _f("active_seconds", "number", True),
        ),
        _event("scroll", "Scroll depth reached on a page", _f("depth_pct", "number", True)),
        _event(
            "exit_intent", "The pointer left towards the browser chrome", _f("page_type", "string")
        ),
        _event(
            "cart_view",
            "The cart was opened",
            _f("items_count", "number"),
            _f("cart_value", "number"),
        ),
    ],
    suggested_features=[
        _feature(
            "active_seconds",
            "Active time",
            "session_heartbeat",
            "SUM",
            ["5m", "1h"],
            "active_seconds",
        ),
        _feature("max_scroll_depth", "Deepest scroll", "scroll", "MAX", ["5m"], "depth_pct"),
        _feature("exit_intents", "Exit intents", "exit_intent", "COUNT", ["5m", "1h"]),
        _feature(
            "last_cart_value",
            "Cart value when last opened",
            "cart_view",
            "LAST",
            ["1h"],
            "cart_value",
        ),
    ],
)

TEMPLATES: dict[str, PipelineTemplate] = {
    t.name: t for t in (_BEHAVIORAL, _TRANSACTION, _CONTEXT, _MARKETING, _TRUST, _REALTIME)
}


def list_templates() -> list[PipelineTemplate]:
    """Returns every template, in category order."""
    return list(TEMPLATES.values())


def get_template(name: str) -> PipelineTemplate | None:
    """Returns the template called `name`, or None."""
    return TEMPLATES.get(name)
