class OwnerMigratesRouter:
    """The app reads and writes as the runtime role ("default"); only migrations run as the
    owner role ("owner"), so `migrate` against "default" has nothing to do."""

    def db_for_read(self, model: type, **hints: object) -> str:
        return "default"

    def db_for_write(self, model: type, **hints: object) -> str:
        return "default"

    def allow_relation(self, obj1: object, obj2: object, **hints: object) -> bool:
        return True

    def allow_migrate(self, db: str, app_label: str, **hints: object) -> bool:
        return db == "owner"
