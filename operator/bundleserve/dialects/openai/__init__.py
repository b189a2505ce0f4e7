"""The OpenAI dialect: OpenAI's chat and text completions and model list over the one invocation core.

`models` parses request bodies into one model call (the bundle's keyword arguments), `generation` reads what the
bundle yields (text pieces, finish reason, usage; stop sequences), `render` builds OpenAI's objects, stream chunks and
errors (one table), `routes` the aiohttp adapters (parse -> core -> render). See docs/dialects.md, "OpenAI", and
docs/bundles.md, "OpenAI-compatible models".
"""
