from . import turnout

routers = [turnout.router]
