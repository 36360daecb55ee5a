"""User-facing errors: each prints as one line and exits 2 (usage or configuration error)."""


class GpuhcError(Exception):
    """A problem with the user's input (file, line, field named in the message)."""


class ConfigError(GpuhcError):
    pass


class ProfileError(GpuhcError):
    pass


class ScenarioError(GpuhcError):
    pass
