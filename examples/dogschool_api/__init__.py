"""The Dog School as an HTTP API on Starlette, with the asyncio API and an async projection.

``python -m examples.dogschool_api --port 8000`` serves it with uvicorn, configured by the
environment as any application is (``PERSISTENCE_MODULE`` and the rest).
"""
