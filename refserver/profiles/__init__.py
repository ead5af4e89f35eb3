"""Profiles: local profile fields (Matrix 1.16 / MSC4133 extended profiles).

``fields`` holds the pure validation rules shared by the client API and (later) incoming
MSC4259 EDUs; ``service`` owns reads and writes of local profiles.
"""
