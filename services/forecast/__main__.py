from services.forecast.server import main

main()
