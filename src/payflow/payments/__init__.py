"""Payments: the API's service (``intake``), the job handler and the rules of processing
(``handler``, ``service``), the processor (a simulator), request validation and currencies."""
