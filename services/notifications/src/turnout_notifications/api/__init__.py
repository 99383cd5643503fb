from . import campaigns, sandbox

routers = [campaigns.router, sandbox.router]
