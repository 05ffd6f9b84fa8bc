"""Retrieval quality on a small labelled set: notebook cells and questions that should find
them (recall@4 through the real memory: SQLite, index, embedder)."""

from __future__ import annotations

import pytest

from mirai_magics.config import parse_config
from mirai_magics.session import Session

# (name, source, output) of a typical analysis notebook
CELLS = [
    (
        "load",
        (
            "import csv\n"
            "with open('sales_2023.csv') as f:\n"
            "    rows = list(csv.DictReader(f))\n"
            "len(rows)"
        ),
        "1200",
    ),
    (
        "clean",
        ("rows = [r for r in rows if r['amount'] and float(r['amount']) > 0]\nlen(rows)"),
        "1174",
    ),
    (
        "dates",
        (
            "from datetime import datetime\n"
            "for r in rows:\n"
            "    r['date'] = datetime.strptime(r['date'], '%Y-%m-%d')"
        ),
        "",
    ),
    (
        "monthly",
        (
            "from collections import defaultdict\n"
            "monthly = defaultdict(float)\n"
            "for r in rows:\n"
            "    monthly[r['date'].month] += float(r['amount'])\n"
            "dict(monthly)"
        ),
        "{1: 10234.5, 2: 9876.0}",
    ),
    (
        "top_customers",
        ("by_customer = Counter(r['customer_id'] for r in rows)\nby_customer.most_common(10)"),
        "[('C042', 31), ('C007', 28)]",
    ),
    (
        "hist",
        (
            "import matplotlib.pyplot as plt\n"
            "plt.hist([float(r['amount']) for r in rows], bins=40)\n"
            "plt.title('Order amount distribution')"
        ),
        "",
    ),
    (
        "scatter",
        (
            "plt.scatter(ages, spend, alpha=0.3)\n"
            "plt.xlabel('customer age'); plt.ylabel('yearly spend')"
        ),
        "",
    ),
    (
        "split",
        (
            "from sklearn.model_selection import train_test_split\n"
            "X_train, X_test, y_train, y_test = train_test_split("
            "X, y, test_size=0.2, random_state=0)"
        ),
        "",
    ),
    (
        "linreg",
        (
            "from sklearn.linear_model import LinearRegression\n"
            "model = LinearRegression().fit(X_train, y_train)\n"
            "model.score(X_test, y_test)"
        ),
        "0.71",
    ),
    (
        "forest",
        (
            "from sklearn.ensemble import RandomForestClassifier\n"
            "clf = RandomForestClassifier(n_estimators=300, max_depth=8)\n"
            "clf.fit(X_train, churn_train)"
        ),
        "",
    ),
    (
        "confusion",
        (
            "from sklearn.metrics import confusion_matrix\n"
            "confusion_matrix(churn_test, clf.predict(X_test))"
        ),
        "array([[812, 40], [65, 83]])",
    ),
    (
        "sql",
        (
            "import sqlite3\n"
            "conn = sqlite3.connect('warehouse.db')\n"
            "inventory = conn.execute('SELECT sku, stock FROM inventory').fetchall()"
        ),
        "",
    ),
    (
        "api",
        (
            "import requests\n"
            "resp = requests.get('https://api.example.com/v1/weather', params={'city': 'Osaka'})\n"
            "weather = resp.json()"
        ),
        "",
    ),
    (
        "regex",
        ("import re\nemails = re.findall(r'[\\w.]+@[\\w.]+', text)\nlen(emails)"),
        "57",
    ),
    (
        "json_save",
        ("import json\nwith open('report.json', 'w') as f:\n    json.dump(summary, f, indent=2)"),
        "",
    ),
    (
        "outliers",
        (
            "mean, std = statistics.mean(amounts), statistics.stdev(amounts)\n"
            "outliers = [a for a in amounts if abs(a - mean) > 3 * std]\n"
            "len(outliers)"
        ),
        "12",
    ),
    (
        "fib",
        (
            "def fibonacci(n):\n"
            "    a, b = 0, 1\n"
            "    for _ in range(n):\n"
            "        a, b = b, a + b\n"
            "    return a"
        ),
        "",
    ),
    (
        "timing",
        (
            "import time\n"
            "start = time.perf_counter()\n"
            "slow_function()\n"
            "elapsed = time.perf_counter() - start"
        ),
        "",
    ),
    (
        "text_clean",
        (
            "def normalise_text(s):\n"
            "    return ' '.join(s.lower().split())\n"
            "titles = [normalise_text(t) for t in titles]"
        ),
        "",
    ),
    (
        "merge",
        "joined = {c['id']: {**c, **orders.get(c['id'], {})} for c in customers}",
        "",
    ),
    (
        "pivot",
        (
            "table = {}\n"
            "for r in rows:\n"
            "    table.setdefault(r['region'], {}).setdefault(r['product'], 0)\n"
            "    table[r['region']][r['product']] += 1"
        ),
        "",
    ),
    (
        "image",
        ("from PIL import Image\nimg = Image.open('logo.png').convert('L').resize((128, 128))"),
        "",
    ),
    (
        "async",
        (
            "import asyncio\n"
            "async def fetch_all(urls):\n"
            "    return await asyncio.gather(*(fetch(u) for u in urls))"
        ),
        "",
    ),
    (
        "error",
        "total = sum(r['amount'] for r in rows)",
        "TypeError: unsupported operand type(s) for +: 'int' and 'str'",
    ),
    (
        "config",
        (
            "import yaml\n"
            "settings = yaml.safe_load(open('config.yaml'))\n"
            "settings['database']['host']"
        ),
        "'db.internal'",
    ),
    (
        "lr_sched",
        (
            "scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=50)\n"
            "for epoch in range(50):\n"
            "    train_one_epoch(); scheduler.step()"
        ),
        "",
    ),
    (
        "tokenize",
        (
            "from collections import Counter\n"
            "word_counts = Counter(w for doc in docs for w in doc.split())\n"
            "word_counts.most_common(20)"
        ),
        "",
    ),
    (
        "geo",
        (
            "from math import radians, sin, cos, asin, sqrt\n"
            "def haversine(lat1, lon1, lat2, lon2):\n"
            "    dlat, dlon = radians(lat2 - lat1), radians(lon2 - lon1)\n"
            "    a = sin(dlat/2)**2 + cos(radians(lat1))*cos(radians(lat2))*sin(dlon/2)**2\n"
            "    return 2 * 6371 * asin(sqrt(a))"
        ),
        "",
    ),
]
# (question, the cell that answers it); the second half was written before tuning
QUERIES = [
    ("how did we load the sales csv file?", "load"),
    ("where do we drop rows with missing or negative amount", "clean"),
    ("parse the date strings", "dates"),
    ("total sales per month", "monthly"),
    ("who are the top customers by number of orders", "top_customers"),
    ("histogram of order amounts", "hist"),
    ("scatter plot of age against spend", "scatter"),
    ("train test split", "split"),
    ("fit a linear regression and its score", "linreg"),
    ("random forest churn classifier", "forest"),
    ("confusion matrix of the churn predictions", "confusion"),
    ("query the inventory table in the sqlite warehouse", "sql"),
    ("call the weather api for Osaka", "api"),
    ("extract email addresses with a regular expression", "regex"),
    ("save the summary report as json", "json_save"),
    ("find outliers more than three standard deviations", "outliers"),
    ("fibonacci function", "fib"),
    ("measure how long slow_function takes", "timing"),
    ("lowercase and normalise the titles", "text_clean"),
    ("join customers with their orders", "merge"),
    ("count products per region", "pivot"),
    ("resize the logo image to grayscale", "image"),
    ("fetch all urls concurrently with asyncio", "async"),
    ("why did summing the amounts fail with a TypeError", "error"),
    ("read the database host from the yaml config", "config"),
    ("cosine learning rate schedule", "lr_sched"),
    ("most common words in the documents", "tokenize"),
    ("distance between two latitude longitude points", "geo"),
    ("read rows from the csv with DictReader", "load"),
    ("filter out zero amounts", "clean"),
    ("strptime", "dates"),
    ("aggregate amount by month", "monthly"),
    ("most_common customer ids", "top_customers"),
    ("amount distribution plot with 40 bins", "hist"),
    ("test_size 0.2", "split"),
    ("model accuracy on the test set for the regression", "linreg"),
    ("n_estimators max_depth forest", "forest"),
    ("stock levels per sku", "sql"),
    ("requests get json response", "api"),
    ("write json file with indent", "json_save"),
    ("perf_counter elapsed", "timing"),
    ("PIL convert to grayscale", "image"),
    ("asyncio gather", "async"),
    ("the TypeError adding int and str", "error"),
    ("yaml safe_load settings", "config"),
    ("scheduler step each epoch", "lr_sched"),
    ("word frequency counter", "tokenize"),
    ("haversine great circle distance", "geo"),
    ("standard deviation outlier detection", "outliers"),
]


def recall_at(session: Session, k: int) -> tuple[float, list[str]]:
    memory = session.memory
    for n, (name, source, output) in enumerate(CELLS, start=1):
        memory.add_cell(source, cell_id=name, count=n, output=output)
    assert memory.flush(60)
    misses = []
    for question, name in QUERIES:
        found = [h.source for h in memory.search(question, k)]
        if f"cell:{name}" not in found:
            misses.append(f"{question!r} → {found[:2]}")
    return 1 - len(misses) / len(QUERIES), misses


@pytest.mark.parametrize("embedder", ["local", "openai"])
def test_recall_at_4(embedder, tmp_path, monkeypatch, shared_offline_server):
    monkeypatch.setenv("MIRAI_HOME", str(tmp_path))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-recall-0123456789")
    url = shared_offline_server.url
    rag = f"context: {{rag: {{embedder: {embedder}}}}}"
    config = parse_config(f"endpoint: {{base_url: '{url}'}}\n{rag}")
    with Session(config) as session:
        recall, misses = recall_at(session, 4)
    print(f"recall@4 ({embedder}) = {recall:.3f} on {len(QUERIES)} questions; misses: {misses}")
    assert recall >= 0.9, misses
