"""Load tests for samclip-serve: Locust user classes (locustfile.py), synthetic images, and the runner."""
