"""schedd's built-in plugins, each registered through the ``schedd.plugins`` entry points."""
