"""The relay: publishes the event store's notification log to the events topic."""
