"""Import-only stand-in for ray (benchmark harness); any use other than @ray.remote raises."""


def remote(*args, **kwargs):
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda f: f


def __getattr__(name):
    raise AttributeError(f"ray stub: {name} not available")
