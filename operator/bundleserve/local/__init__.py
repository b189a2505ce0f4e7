"""bundleserve.local"""
