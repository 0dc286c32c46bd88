from wtb_ray.cli import main

main()
