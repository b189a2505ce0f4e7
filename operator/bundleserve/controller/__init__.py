"""bundleserve.controller"""
