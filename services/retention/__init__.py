"""The retention service: expires backup chains by the retention rules and deletes their objects."""
