"""What each plan includes by default. Changing a plan later is a row update, not a deploy."""

from django.db import migrations

ALL = ("starter", "pro", "enterprise")
ROWS = [
    # tools
    *[(plan, "tool", "search_playbook", {}) for plan in ALL],
    *[(plan, "tool", "request_human_handoff", {}) for plan in ALL],
    *[(plan, "tool", "http_request", {}) for plan in ("pro", "enterprise")],
    # models: the offline responder everywhere; provider models when the tenant has a key
    *[
        (plan, "model", "offline-extractive", {"provider": "offline", "default": True})
        for plan in ALL
    ],
    *[
        (
            plan,
            "model",
            "gpt-4o-mini",
            {"provider": "openai", "model": "gpt-4o-mini", "temperature": 0.2},
        )
        for plan in ("pro", "enterprise")
    ],
    (
        "enterprise",
        "model",
        "claude-sonnet",
        {"provider": "anthropic", "model": "claude-sonnet-4-5", "temperature": 0.2},
    ),
    # prompts and data sources
    *[(plan, "prompt", "system", {}) for plan in ALL],
    *[(plan, "data_source", "playbook", {"embedder": "hashing"}) for plan in ALL],
]


def add_defaults(apps, schema_editor):
    # The migration's own connection (the owner's), not the router's default.
    alias = schema_editor.connection.alias
    plan_entitlement = apps.get_model("agents", "PlanEntitlement")
    for plan, kind, name, config in ROWS:
        plan_entitlement.objects.using(alias).update_or_create(
            plan=plan, kind=kind, name=name, defaults={"config": config}
        )


def remove_defaults(apps, schema_editor):
    alias = schema_editor.connection.alias
    apps.get_model("agents", "PlanEntitlement").objects.using(alias).all().delete()


class Migration(migrations.Migration):
    dependencies = [("agents", "0001_initial")]
    operations = [migrations.RunPython(add_defaults, remove_defaults)]
