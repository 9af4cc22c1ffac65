"""Rate-limit governance (CONTRACT §7): policies, shared budgets and IETF RateLimit headers."""

from api.ratelimit.limiter import Limiter, NoLimiter

__all__ = ["Limiter", "NoLimiter"]
