"""The GPU check (`make gpu-check`) and the bundle it carries to a GPU machine (`make gpu-check-bundle`)."""
