"""bundleserve.bundle"""
