from services.anomaly.server import main

main()
