"""refserver: a reference Matrix homeserver."""
