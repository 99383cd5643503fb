from . import admin, ballots, dashboard, stream, turnout

routers = [turnout.router, ballots.router, stream.router, dashboard.router, admin.router]
