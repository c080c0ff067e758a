-- (d) minting through the API, as bench_admin (an admin of workspace :ws).
SELECT * FROM apikeys.create_key(:ws, NULL);
