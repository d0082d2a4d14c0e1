from asgiref.sync import markcoroutinefunction


def async_only(get_response):
    """An async-only middleware: Django's sync request path reaches it through
    asgiref's async_to_sync, which greenhub.contrib.django turns into await_."""

    async def middleware(request):
        request.async_middleware_ran = True
        response = await get_response(request)
        response["X-Async-Middleware"] = "1"
        return response

    middleware.sync_capable = False
    middleware.async_capable = True
    return markcoroutinefunction(middleware)


async_only.sync_capable = False
async_only.async_capable = True
