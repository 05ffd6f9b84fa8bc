"""The redaction corpus: secret shapes that must go and look-alikes that must stay.

Shared by ``tests/test_redaction.py`` (recall 1.0, no look-alike touched) and
``benchmarks/bench_redaction.py`` (prints recall, precision and the cost per KB). Every
secret here is fake (made up, or the providers' documented examples).
"""

from __future__ import annotations

PEM_BODY = "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB"
OPENSSH_BODY = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW"

# (text, the secret in it): after redaction the secret must be gone.
SECRETS: list[tuple[str, str]] = [
    ('db_password = "hunter2-s3cret"', "hunter2-s3cret"),
    ("DB_PASSWORD = 'correct horse battery'", "correct horse battery"),
    ('conn = psycopg2.connect(host="db", password="Tr0ub4dor&3")', "Tr0ub4dor&3"),
    ('config = {"user": "admin", "password": "pa55word!"}', "pa55word!"),
    ('{"api_key": "c0ffee-1234-beef-5678"}', "c0ffee-1234-beef-5678"),
    ("database:\n  host: db.internal\n  password: hunter2yaml\n", "hunter2yaml"),
    ("PASSWORD=envhunter2\nUSER=admin\n", "envhunter2"),
    ("export DB_TOKEN=tok_8f7a6b5c4d", "tok_8f7a6b5c4d"),
    ("engine = create_engine('postgresql://admin:pgs3cret@db.internal:5432/sales')", "pgs3cret"),
    ("REDIS_URL=redis://:r3dispass@cache:6379/0", "r3dispass"),
    ("git clone https://user:p%40ss-w0rd@git.example.com/repo.git", "p%40ss-w0rd"),
    ("client = OpenAI(api_key='sk-proj-AbCdEf0123456789GhIjKlMnOpQrStUv')", "sk-proj-AbCdEf0123"),
    ("key: sk-0123456789abcdefghijABCDEFGHIJ0123456789abcd", "sk-0123456789abcdefghij"),
    ("gh auth login --with-token ghp_0123456789abcdefghijABCDEFGHIJ012345", "ghp_0123456789abcd"),
    ("oauth = 'gho_16C7e42F292c6912E7710c838347Ae178B4a'", "gho_16C7e42F292c6912E7710c"),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEF", "github_pat_11A"),
    ("SLACK = 'xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx'", "xoxb-1234567890"),
    ("slack_client(xoxp-1234567890-0987654321-1122334455-abcdef0123456789)", "xoxp-1234567890"),
    ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("session key ASIAY34FZKBOKMUTVV7A expires soon", "ASIAY34FZKBOKMUTVV7A"),
    (
        "[default]\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    ("maps.Client(key='AIzaSyA-1234567890abcdefghijklmnopqrstu')", "AIzaSyA-1234567890abc"),
    ("stripe.api_key = 'sk_live_4eC39HqLyjWDarjtT1zdp7dc'", "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ("restricted: rk_live_51H8abcdefghijklmnopqrstu", "rk_live_51H8abcdefghijk"),
    (
        "jwt = eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4i"
        "fQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
        "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV",
    ),
    (
        f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n{PEM_BODY[::-1]}\n"
        "-----END RSA PRIVATE KEY-----\n",
        PEM_BODY,
    ),
    (
        f"-----BEGIN OPENSSH PRIVATE KEY-----\n{OPENSSH_BODY}\n-----END OPENSSH PRIVATE KEY-----",
        OPENSSH_BODY,
    ),
    (
        '{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\\n'
        f'{PEM_BODY}\\n-----END PRIVATE KEY-----\\n"}}',
        PEM_BODY,
    ),
    ("curl -H 'Authorization: Bearer abc123def456ghi789' https://api", "abc123def456ghi789"),
    ('token = "3f2a9c1e7b"', "3f2a9c1e7b"),
    ('client_secret: "s3cr3t-v4lue"', "s3cr3t-v4lue"),
    ("self.api_key = 'ak-live-7781'", "ak-live-7781"),
    ('settings["SECRET_KEY"] = "django-insecure-k2#9x!v0"', "django-insecure-k2#9x!v0"),
    ('dbPassword = "camelCaseSecret1"', "camelCaseSecret1"),
    ("GET https://api.example.com/v1/items?access_token=q7Zp0aX9&page=2", "q7Zp0aX9"),
    ('conn_str = "host=db.internal user=admin password=libpqS3cret"', "libpqS3cret"),
    (
        'encryption_key = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"',
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    ),
    ("PGPASSWORD=pgenv-pass9 psql -h db.internal", "pgenv-pass9"),
    ("MYSQL_PWD=mysqlpw42 mysql -u root", "mysqlpw42"),
    ('{"content": "db_password = \\"hunter2-json\\""}', "hunter2-json"),
    ('password: str = "annot-pass-77"', "annot-pass-77"),
    ('if password == "cmp-secret-9":', "cmp-secret-9"),
    ("s = \"old_token = 'nested-tok-31'\"", "nested-tok-31"),
    ("docker run -e POSTGRES_PASSWORD=dockerpw7 postgres", "dockerpw7"),
    ('İzmir office: db_password = "ünïcode-pass1"', "ünïcode-pass1"),  # lower() grows İ
    ("python manage.py createsuperuser --password=cli-pass-42", "cli-pass-42"),
]

# Texts that must come out unchanged.
LOOKALIKES: list[str] = [
    'digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"',
    'commit = "3b18e512dba79e4c8300dd08aeb37f8e728b8dad"',
    "git checkout 3b18e51 && git log -1 3b18e512dba79e4c8300dd08aeb37f8e728b8dad",
    'run_id = "123e4567-e89b-12d3-a456-426614174000"',
    'data = "SGVsbG8sIFdvcmxkISBUaGlzIGlzIGJhc2U2NCB0ZXN0IGRhdGEu"',
    "token_count = 5",
    "max_tokens = 100",
    "password_min_length = 8",
    'key = "name"',
    'sort_key = "created_at"',
    'primary_key = "id"',
    "remote = 'https://user@github.com/org/repo.git'",
    "open http://localhost:8888/tree/notebooks/analysis.ipynb",
    "DATABASE_URL=postgresql://db.internal:5432/sales",
    "conn = connect(host=host, password=pw)",
    "password = getpass.getpass()",
    'api_key = os.environ["OPENAI_API_KEY"]',
    "tokens = tokenizer.encode(text)",
    "for key, value in settings.items():\n    print(key, value)",
    "df.sort_values('name', key=lambda s: s.str.lower())",
    "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A\n-----END PUBLIC KEY-----",
    "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkq\n-----END CERTIFICATE-----",
    "pip install sk-learn-compatible task-runner-1234567 risk-assessment-2024",
    "@dataclass\nclass Login:\n    user: str\n    password: str\n",
    "class Settings(BaseSettings):\n    api_key: SecretStr\n",
    "token: Optional[str] = None",
    "Bearer authentication is described in RFC 6750.",
    "Set the Authorization header to Bearer YOUR_KEY.",
    'password_hint = "your pet\'s name"',
    'secret_name = "prod-db"',
    'token_type = "bearer"',
    'api_key_env_var: "OPENAI_API_KEY"',
    "PASSWORD_MIN_LENGTH=8\nMAX_TOKENS=4096",
    'if token == "":\n    raise ValueError("no token")',
    "password: ${DB_PASSWORD}",
    "DB_PASSWORD=$DB_PASSWORD_FROM_VAULT",
    "token = None\nsecret = 42",
    'cache_key = f"user:{user_id}"',
    's3_key = "raw/2024/06/events.parquet"',
    "arn:aws:iam::123456789012:role/Admin",
    'headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}',
    "mail someone@example.com or ssh git@github.com:org/repo.git",
    "header = 'eyJhbGciOiJIUzI1NiJ9'",
    'password_reset_url = "https://example.com/reset?user=42"',
    "pwd = os.getcwd()\n!pwd",
    '{"tokens_in": 1200, "tokens_out": 300, "max_tokens": 2000}',
    "image: python@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "A token is a piece of a word; pass a key function to sorted().",
    "Token: the unit of text a model reads",
    "client = OpenAI(api_key=api_key)",
    '{"api_key": "(not set)", "organization": null}',
]
