"""Utilities: parameter trees and array helpers."""
from .parameters import Param  # noqa: F401
