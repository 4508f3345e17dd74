"""avp: hide what images show from people while a chosen model still sees them (AVP/AVIH)."""

__version__ = "0.1.0"
