"""Accounts: registration (with user-interactive auth), password login, access tokens.

CS API "Account registration and management", "Login", "User-Interactive Authentication API".
"""
