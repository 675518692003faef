"""Staff second factors (TOTP secrets, backup-code digests) under row-level security: only in
a verified platform context, which only platform staff (or the admin's own login and
enrolment steps, for the account whose password was just checked) enter. Tenant traffic --
and any SQL it runs -- reads none of them.
"""

from django.db import migrations

TABLES = ("otp_totp_totpdevice", "otp_static_staticdevice", "otp_static_statictoken")

FORWARD = "".join(
    f"ALTER TABLE public.{table} ENABLE ROW LEVEL SECURITY; "
    f"CREATE POLICY staff_second_factors ON public.{table} AS PERMISSIVE FOR ALL TO PUBLIC "
    "USING (public.playbook_context_platform()) "
    "WITH CHECK (public.playbook_context_platform()); "
    for table in TABLES
)
BACKWARD = "".join(
    f"DROP POLICY IF EXISTS staff_second_factors ON public.{table}; "
    f"ALTER TABLE public.{table} DISABLE ROW LEVEL SECURITY; "
    for table in TABLES
)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0007_support_session_staff_name"),
        ("otp_totp", "0003_add_timestamps"),
        ("otp_static", "0003_add_timestamps"),
    ]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
