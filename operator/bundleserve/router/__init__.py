"""bundleserve.router"""
