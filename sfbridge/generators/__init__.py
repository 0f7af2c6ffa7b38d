"""Registry of video generators the daemon can serve (``sfbridge serve --model NAME``).

Entries are imported lazily so that ``testsrc`` never pays for importing torch. A name is only
registered once its generator is real: no placeholders.
"""

from __future__ import annotations

import importlib
from typing import Any

from sfbridge.generators.base import Block, Generator, GeneratorError, Steering

# name -> "module:factory"; the factory takes keyword options and returns a Generator.
REGISTRY: dict[str, str] = {
    "testsrc": "sfbridge.generators.testsrc:create",
    "tiny": "sfbridge.generators.tiny:create",
    "self-forcing": "sfbridge.generators.self_forcing:create",
}


def available() -> list[str]:
    return sorted(REGISTRY)


def create_generator(name: str, **options: Any) -> Generator:
    """Build the generator called ``name``; unknown names raise :class:`GeneratorError`."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise GeneratorError(f"unknown model {name!r}; available: {', '.join(available())}") from None
    module_name, factory = target.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, factory)(**options)


__all__ = ["Block", "Generator", "GeneratorError", "Steering", "available", "create_generator"]
