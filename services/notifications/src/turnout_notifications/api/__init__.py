from . import campaigns, replies, sandbox, webhooks

routers = [campaigns.router, sandbox.router, sandbox.page_router, webhooks.router,
           replies.router]
