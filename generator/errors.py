"""Domain errors. The CLI turns each into a one-line `click.ClickException`; messages name the
file or option at fault and say how to fix it."""


class AtlasError(Exception):
    """Base class of every error Model Atlas reports to the user."""


class ModelLoadError(AtlasError):
    """A model could not be resolved, downloaded or loaded, or its attention cannot be captured."""


class ArtifactError(AtlasError):
    """An artifact on disk is missing, truncated, hand-edited or of another schema version."""


class OptionError(AtlasError):
    """A command-line option has an invalid value."""
