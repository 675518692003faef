"""Tenant credentials: per-tenant envelope encryption with a pluggable KMS (DESIGN.md inv. 11).

    secret --AES-256-GCM(data key of the tenant, AAD = tenant id + credential id)--> ciphertext
    data key --KEK of the KMS backend (context = tenant id)--> wrapped data key

A database dump holds only ciphertext and wrapped keys; a stolen KEK version unlocks nothing
without the database; a ciphertext copied to another row or tenant fails its AAD check.
"""
