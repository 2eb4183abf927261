"""The HTTP API (aiohttp): ``app.create_app(context.WebContext(...))``; one module per resource,
thin adapters over the core services."""
