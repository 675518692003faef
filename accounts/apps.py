from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_in

        from accounts import schema  # noqa: F401  (registers the OpenAPI auth extension)
        from accounts.actions import record_last_login

        # Django's own receiver saves the user outside any context, which row-level security
        # on accounts_user refuses; ours writes it in the account's own context. It takes
        # Django's dispatch_uid: this app is ready before django.contrib.auth, whose
        # connect of update_last_login under the same uid then does nothing.
        user_logged_in.connect(record_last_login, dispatch_uid="update_last_login")
